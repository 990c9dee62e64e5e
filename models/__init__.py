"""The ML side of Spoke: ViT, data, training, export and inference backends.

Imports nothing from ``daemon`` or ``provisioning``: a data scientist can use it alone.

Where things are:
- ``models.config``: ``ViTConfig``, ``preset(name)``, ``tiny_config()``, ``CODEBRIM_LABELS``;
- ``models.vit``: ``VisionTransformer`` (timm state-dict names), ``build_model(cfg, seed)``;
- ``models.checkpoint``: ``load_weights`` for ours or timm's safetensors, ``save_weights``;
- ``models.artifact``: ``write_artifact``, ``load_artifact``, ``Artifact``, ``ModelCard``;
- ``models.backends``: ``create_backend(artifact, "auto"|"torch"|"onnxruntime"|"tensorrt")``;
- ``models.images``: ``decode_image(data, ImageLimits)``, bounded, with EXIF facts;
- ``models.tiling``: ``tile_image`` and the tile geometry;
- ``models.pipeline``: ``Pipeline`` (decode -> tile -> infer -> aggregate), ``render_overlay``;
- ``models.bench``: what ``spoke bench`` measures.
"""
