"""The composition layer between the core and the CLI: inputs from paths or ``s3://``, model
factories, one function per verb with typed results, and output writers.

The core (``volume``, ``models``, ``matching``, ``tasks``) takes SimpleITK images and arrays and
knows nothing of S3, Ray, Triton or the CLI; this layer is where those meet it. The top-level
package re-exports the public names (``uae_ray.UAE``, ``uae_ray.landmarks``, ...).
"""
