"""The project's own vision models: a frame renderer, sample sets, and the training that produces the ONNX files.

`render` and `samples` need only numpy and Pillow, so the demo and the tests can
draw frames at run time; `train` needs torch (the `train` extra) and is run
offline to rebuild `models/onnx/`.
"""
