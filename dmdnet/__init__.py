"""DMDNet blind face restoration with generic and specific (per-person) memory dictionaries.

Public API:
    component_boxes(landmarks)            68 x 2 landmarks -> 4 x 4 int boxes (LE, RE, NO, MO)
    load(path_or_state)                  the authors' DMDNet.pth, loaded unchanged, eval mode
    model.build_dictionary(refs, boxes)   -> SpecificDictionary (save / load, non-pickle)
    model(lq, boxes, dictionary=None)     -> B x 3 x 512 x 512 in [-1, 1]
"""
from dmdnet.boxes import component_boxes
from dmdnet.checkpoint import CheckpointError, load
from dmdnet.dictionary import SpecificDictionary
from dmdnet.model import DMDNet

__all__ = ["CheckpointError", "DMDNet", "SpecificDictionary", "component_boxes", "load"]
