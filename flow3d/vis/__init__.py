"""Looking at a trained scene: camera paths for videos and the interactive viewer."""
