"""Layer 2, measurement: evaluators of a model at given parameters, and the metrics and networks they use.

    base            the Evaluator interface ((params, key) -> {name: value}, name, prefix, every, info), Context
    registry        EVALUATORS and build_evaluators(config, context): the one factory, for training and offline
    heldout         Heldout: reconstruction error and posterior log-likelihood on test images
    loglik          LogLikelihood: the common protocol's TI and AIS log p(x), the training estimator's bias and variance
    sample_quality  SampleQuality: generated images against the training split in a feature space
    gradient_stats  GradientStats: the variance of the learning gradient (core.gradstats)
    features        FeatureSpace (Inception or the data set's classifier), cached reference statistics
    metrics         Fréchet distance, KID, FID∞/KID∞, precision/recall on features
    classifier      the small CNN trained on a labelled data set's own labels, cached per data digest
    inception       the FID Inception-v3: network, torch-free weight-file reader, weights, feature function
"""
