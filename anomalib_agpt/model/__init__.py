"""The tensor path: where an image goes (encoder, pre-processing, maps, score), composing the explanation head."""
