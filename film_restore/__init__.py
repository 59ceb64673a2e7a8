"""Batch restoration of actors' faces in films: face analysis, alignment and paste-back.

Convention everywhere in film_restore: images are uint8 RGB arrays of shape H x W x 3;
points are float (x, y) pixel coordinates with the origin at the top-left pixel centre.
Conversion to BGR happens only at the boundary of models that expect it.
"""
