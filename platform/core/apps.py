from django.apps import AppConfig


class CoreConfig(AppConfig):
    name = "core"
    verbose_name = "Core"

    def ready(self) -> None:
        # Connects the admin login's failure counter (user_login_failed).
        from . import admin_login  # noqa: F401
