"""Gate training: text sources, teacher features, fitting, config files, the whole pipeline."""
