"""Everything a released model needs at answer time, and nothing else.

    rule        the decision rule: probabilities -> one class and a consistent malignant flag
    release     the released-model folder: model.keras + release.json (rule, provenance)
    uploads     untrusted bytes -> images, or a refusal with an HTTP status
    ood         the out-of-distribution statistics: pooled features -> a score, refused past
                the release's threshold ("out of scope: refer to a radiologist")
    engine      the engines: images -> probabilities and features (Keras, ONNX Runtime)
    classifier  the core every surface uses: load a release, answer for images
    heatmaps    class activation maps of the answered class, for the page
    predlog     the prediction log: one row per answer, no image and no file name
    collection  the same rows handed to Azure ML's data collector (score.py)
    app         the FastAPI service and page (static/)
    pyfunc      the MLflow pyfunc flavor and how it is logged (pyfunc_model: the model code)
    shipping    which files ship with a model (this folder + the base modules it imports)

It imports nothing of the pipeline outside itself but a small base (`pipeline.images`,
`pipeline.dicom`, `pipeline.files`, `pipeline.cam`, `pipeline.environment`;
`shipping.base_modules()` finds them), so what ships with a model
is this folder, and training never depends on it.
"""
