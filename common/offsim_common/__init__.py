"""The contract every offsim service imports: subjects, messages, config, database and bus."""
