from .service.client import command

command()
