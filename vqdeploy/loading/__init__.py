"""Turning a taming run (Lightning ``.ckpt`` + ``*-project.yaml``) into a vqdeploy model."""
