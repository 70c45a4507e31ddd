"""`python -m api`: serve the API and dashboard with uvicorn on AIA_API_HOST:AIA_API_PORT."""

import uvicorn

from api.app import create_app
from streams.settings import get_settings


def main() -> None:
    settings = get_settings()
    uvicorn.run(create_app(settings), host=settings.api_host, port=settings.api_port, log_level="warning")


if __name__ == "__main__":
    main()
