from .pipeline_uvit import UViTPipeline, classifier_free_guidance, to_uint8

__all__ = ["UViTPipeline", "classifier_free_guidance", "to_uint8"]
