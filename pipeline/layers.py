"""The classifier's layer names: the contract between the model the pipeline builds
(pipeline.backbones) and the code that looks inside it at answer time (class activation maps,
the engines' input size, the pooled features of the OOD check, the ONNX export). One home, so a
renamed layer cannot leave a reader behind. Part of the serving package's base: it ships with
every released model."""

INPUT = "image"  # raw RGB pixels of any size
RESIZE = "resize"  # to prepare.image_size, letterboxed when prepare.keep_aspect
PREPROCESS = "preprocess"  # the backbone's own pixel scaling, as a layer (so that it exports)
BACKBONE = "backbone"  # the convolutional base: class activation maps read its feature map
POOL = "pool"  # global average pooling: the OOD statistics and the ONNX export's features
DROPOUT = "dropout"
PREDICTIONS = "predictions"  # softmax over params' classes
CONTRACT = (INPUT, RESIZE, PREPROCESS, BACKBONE, POOL, PREDICTIONS)  # in model order
