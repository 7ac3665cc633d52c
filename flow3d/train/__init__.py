"""Training: one step reads render -> loss terms -> optimiser step (:meth:`trainer.Trainer.train_step`).

* :mod:`~flow3d.train.batch` -- the frames, targets and track points of one step;
* :mod:`~flow3d.train.context` -- :class:`~flow3d.train.context.StepContext`, all a loss term may read;
* :mod:`~flow3d.train.terms` -- the table of loss terms (name, function, weight field, needs), checked
  against :class:`flow3d.config.LossConfig` at start-up;
* :mod:`~flow3d.train.som_terms`, :mod:`~flow3d.train.depth_order` -- the term functions;
* :mod:`~flow3d.train.neighbors` -- flow neighbours of the training frames;
* :mod:`~flow3d.train.trainer` -- initialisation, steps, checkpoints (:mod:`flow3d.checkpoint`), logging.
"""
