"""Stand-in of Forge 2's ``backend`` package: UNet with patch dispatch, UnetPatcher, predictor, CFG."""
