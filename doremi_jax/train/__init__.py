"""Train state, pure step functions and the one loop; `python -m doremi_jax.train`."""
