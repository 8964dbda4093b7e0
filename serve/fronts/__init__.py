"""Fronts: what turns an API's own data into a model's tensors and back.

A model is a signature; a front adapts it to an API: ``image`` decodes encoded images into the
model's image tensor, ``classification`` turns class scores into probabilities and labels. Every
API reaches the same batcher through them.
"""
