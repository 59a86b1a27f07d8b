"""Breast-ultrasound tumour classification pipeline: one module per DVC stage plus shared parts.

A map of the package: the stages in the order `dvc repro` runs them, the commands that act on
what they made, then the shared parts grouped by concern. Each stage is `python -m
pipeline.<module>` with a `run(params)` that tests call and a thin `main(argv)`.

Stages (dvc.yaml)
    demo_data     the synthetic demo set, data/raw/synthetic-demo/ (images drawn by `synthetic`)
    prepare       data.raw_dir -> data/prepared/ (checked images, manifest, splits), reports/data/
    augment       the train split -> data/augmented/ (class-balanced, seeded copies)
    train         train@<arch>, one per train.backbones entry: models/trained/<arch>/,
                  reports/train/<arch>/
    evaluate      every model on val and test: reports/evaluate/ (models/<arch>/, plots/<plot>/
                  <arch>.csv, the comparison of every pair; test looks go to the ledger)
    select        the winner on validation -> models/selected/ (the release), card, @challenger
    external      each site of data.external through the release: reports/external/ (counted
                  looks, the card's External validation section)

Commands after the pipeline (Makefile targets)
    promote       @challenger -> @champion through the gate on unseen test images; rollback
    serve         the local service and page for one release (serving/app)
    predict       batch scorer: a folder or CSV of images -> predictions.csv
    monitor       the prediction log against the release's reference: drift report
    export        a release's model.onnx, checked against Keras (select; older releases)
    package       the champion's release and score.py, for an Azure ML deployment
    bring_home    a workspace run's outputs (an Azure ML job or sweep trial) -> select ->
                  @challenger in this project's registry, tagged with where it came from

Running a stage
    config        params.yaml -> frozen dataclasses, validated once (the one source of truth)
    param_checks  config's checks of ranges and relations that types cannot say
    cli           the `main(argv)` every stage shares: a user error is one line and exit code 2
    errors        UserError, the one exception type for user mistakes
    terminal      what a stage prints (library start-up chatter off unless VERBOSE=1)
    files         atomic writes: staged folders, JSON, a temp file then a rename
    paths         where the stages read and write (data/, models/, reports/): one home each
    processes     one writer per output (a lock naming its pid), no trainer outliving dvc
Data in (prepare)
    layouts       where images, labels and masks are in whatever data.raw_dir holds
    inspection    one raw file checked, fitted, hashed, its ids and lesion area; the duplicate
                  groups among them (prepare and external sites alike)
    prepare_report  prepare's summary, CSV reports, contact sheets and printed lines
    images        one image file: decode, validate, convert to 8-bit RGB, fit to a square, PNG
    dicom         one DICOM file -> the same 8-bit image, plus patient and study ids (prepare
                  salts and hashes them before any use)
    curation      the exclusion list (data.exclude)
    duplicates    exact and near-duplicate groups, and label conflicts inside them
    matching      one image's ORB keypoints; where one image lies in another, and if it agrees
    splits        stratified, grouped train / val / test from a seed
    synthetic     draws one ultrasound-like case from a seed (for demo_data and ood_sets)
    copies        edited copies of an image, for bench/duplicates.py's recall figures
Data to the model (train)
    datasets      the prepared and augmented sets as arrays (load_set), paths of data/
    augmentation  the random transforms: flip, rotation, zoom, contrast, brightness, speckle
    phases        the training as phases: warm-up on a frozen backbone, then fine-tuning
    callbacks     what each epoch records: whole-val metrics, best weights, its line, MLflow
    batches       TrainBatches: shuffled, on-the-fly augmented uint8 batches for model.fit
    loader        batches as functions of (seed, epoch, index); worker processes into shared memory
    loader_worker one loader worker process (python -m pipeline.loader_worker, started by loader)
    distribution  train.distribution: data_parallel, one model over every local device (JAX)
    compilation   JAX's persistent compilation cache in the project's .cache/jax
    backbones     DenseNet121 / ResNet50 classifiers, resizing and preprocessing inside the model
    layers        the classifier's layer names (backbones builds them; cam, engines, export read)
    environment   the exact pip requirements a logged model asks for
Measuring (evaluate, select, promote)
    metrics       classification metrics from probabilities, with their intervals
    intervals     how sure a figure is: exact intervals on the effective n for proportions, the
                  cluster bootstrap for the rest (the one home of both)
    statistics    operating point, paired tests, the promotion gate, subgroup tables
    calibration   reliability, calibration slope and intercept, whether a temperature is served
    threshold     the referral threshold chosen on validation, with its stated guarantee
    promotion_gate the gate promote applies: test images unseen by both models, their served
                  answers, the floors and paired non-inferiority
    failures      the worst errors of the served answers, one per group (the card's failure cases)
    subgroups     evaluation subgroups from what the manifest records
    ood_sets      out-of-distribution images a model must refuse, from a seed
    cam           class activation maps (evaluate's figures, the page's heat maps)
    plots         figures (PNG) and the tables behind `dvc plots` (CSV)
    comparison_plots  every model in one `dvc plots` chart: training curves, validation
                  confusion (one long table each, a `model` column, .dvc/plots/ templates)
    plots_page    .dvc/plots.html: the `dvc plots show` page, vega inlined (make plots-page)
    ledger        every look at test: a row of reports/test_looks.csv (committed), figures in MLflow
    model_card    reports/model_card.md, also the registry version's description
    card_results  the card's tables of figures (also test.md's and comparison.md's)
    served_metrics every figure of one split, from the served rule's answers
    evaluate_report  evaluate's figures, tables, markdown, MLflow logging and terminal summary
    external_sets an external site prepared like data.raw_dir, minus copies of development images
                  and their patients (the pairs listed)
    external_report
                  external validation figures from the served answers: intervals, calibration,
                  refusals, case mix, differences from internal test
    external_card external validation in words: the card's section, external.md
    quantize      model.onnx -> INT8 (select.int8), judged on its served answers
Tracking and registry
    tracking      where the MLflow store is; run names and tags (DVC stage, experiment, data)
    registry      register a run's model, move aliases, tag versions
Serving
    serving/      everything a release needs at answer time (its own map is in
                  serving/__init__.py); it imports only images, dicom, cam, environment, layers
                  and files from above, so that folder is what ships with a model

Names easy to confuse
    augment / augmentation    the stage that writes data/augmented/ / the transforms it and
                              batches apply
    demo_data / synthetic     the stage that writes the demo folder / the drawing of one case
    serve / serving/          the command that starts the local service / the package every
                              surface (service, MLflow pyfunc, Azure score.py, predict) answers with
    layouts / images / datasets / batches
                              raw folder -> file list / one file -> array / prepared manifest ->
                              arrays / arrays -> training batches
    metrics / statistics      what a model scores / whether the difference or bound can be trusted
"""
