"""The Label Studio side: the API client, project setup, label sync, QC verdicts on tasks, a local Label Studio server process."""
