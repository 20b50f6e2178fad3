"""The engine as a process: its loop, the api side's client, the messages between them, and what it reports."""
