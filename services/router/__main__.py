"""`python -m services.router`: serve the router service on its configured host and port."""

from services.router.settings import load
from shared.service import serve

if __name__ == "__main__":
    serve("services.router.app:create_app", load())
