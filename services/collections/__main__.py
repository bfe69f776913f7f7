"""`python -m services.collections`: serve the collections service on its configured host and port."""

from services.collections.settings import load
from shared.service import serve

if __name__ == "__main__":
    serve("services.collections.app:create_app", load())
