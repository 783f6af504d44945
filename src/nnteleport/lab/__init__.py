"""The application layer: training loop, data, initialisations, model zoo, plots, HTML reports, experiments, demo.

Nothing in :mod:`nnteleport.engine`, :mod:`nnteleport.gspace`, :mod:`nnteleport.distance` or
:mod:`nnteleport.ensembles` imports from here; the lab composes the library the way a user's own code would.
"""
