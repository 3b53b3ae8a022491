"""``modules/sd_vae.py`` (A1111 1.10.1 82a973c0, line 17; Forge 2 dfdcbab6, line 18): the path of the VAE file
loaded over the checkpoint's own, None when the checkpoint's VAE is used."""

loaded_vae_file = None
