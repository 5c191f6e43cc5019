"""What a trained model does, shown and measured.

* :mod:`~hareid.analysis.visualize` - pictures: attention overlays, hard-attention boxes, ranked lists, plots.
* :mod:`~hareid.analysis.attention_score` - does the soft attention look at the person? (mass on the masks).
* :mod:`~hareid.analysis.ablation` - soft vs hard vs both (the paper's ablation), one command.
* :mod:`~hareid.analysis.report` - one self-contained HTML page per run.
"""
