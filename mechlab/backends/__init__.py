"""Other backends for mechlab's methods: the same labelled results through nnsight (locally, or remotely on NDIF).

    nnsight_model     wrap a Hugging Face model in an ``nnsight.TransformersModel``; sites; NDIF key and routing
    nnsight_methods   DLA, exact activation patching, AtP and IG on an ``nnsight.TransformersModel``

nnsight is optional: ``pip install mechlab[nnsight]``. Without it these modules import, and calling them raises an
``ImportError`` that names the install command.
"""
