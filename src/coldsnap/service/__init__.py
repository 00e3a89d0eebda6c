"""`coldsnap service` (server.py, its workers in worker.py) and the `coldsnap` command's
client of it (client.py), speaking protocol.py."""
