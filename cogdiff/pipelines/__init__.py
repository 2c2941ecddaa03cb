from .model_card import model_card_text, write_model_card
from .pipeline_uvit import UViTPipeline, classifier_free_guidance, to_uint8

__all__ = ["UViTPipeline", "classifier_free_guidance", "model_card_text", "to_uint8", "write_model_card"]
