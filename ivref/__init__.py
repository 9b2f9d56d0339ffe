"""ivref: the reference implementation of Imagen Video (Ho et al., 2022) [IV].

Import modules, not names: ``from ivref import configs, schedules`` then
``configs.preset("toy")``. See README.md for the notebook map and docs/design.md for the layout.
"""

__version__ = "0.1.0"
