from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest

from .models import AIModel


@admin.register(AIModel)
class AIModelAdmin(admin.ModelAdmin[AIModel]):
    list_display = ["id", "kind", "tenant", "base_model", "status", "created_at", "deleted_at"]
    list_filter = ["kind", "status"]
    search_fields = ["id", "tenant__slug"]
    # A choice list of models would be every tenant's (and the scoped manager refuses to
    # list them unscoped); which model a variant derives from is set by the fine-tune.
    readonly_fields = ["parent"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[AIModel]:
        return AIModel.objects.unscoped().select_related("tenant")
