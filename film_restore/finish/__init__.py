"""A face's last steps, after the restorer: guards along its track, paste-back into the frame, the
film's texture and grain, and the measures that decide and report them.

Each module does one thing: flow (the only optical flow), measures (flicker, identity, texture,
fidelity), guards (the limits on the restoration), hold (the hold-still), grain_model and grain
(the film's grain estimated, then synthesised), bands (the band split), paste (mattes, colour,
paste-back); window and steps chain them over windows of frames for the Composer
(film_restore.compose). ops holds the image primitives, for numpy and for torch.
"""
