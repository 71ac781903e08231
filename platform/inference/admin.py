from typing import Any

from django import forms
from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest

from .catalog import BASE_MODELS
from .models import AIModel

# The encoders this deployment serves (the workers load them by these names).
BASE_MODEL_CHOICES = [("", "---------")] + [
    (name, name) for name in dict.fromkeys(spec["base_model"] for spec in BASE_MODELS)
]


class AIModelAdminForm(forms.ModelForm[AIModel]):
    """``base_model`` is a choice among the encoders served: free text once took a typo,
    and every classification on that model failed with 503. A row whose encoder is not
    one of them shows the empty choice, so saving it asks for one."""

    base_model = forms.ChoiceField(
        choices=BASE_MODEL_CHOICES, help_text=AIModel._meta.get_field("base_model").help_text
    )

    class Meta:
        model = AIModel
        # Not ``parent``: its choices would be every tenant's models (AIModelAdmin shows it).
        fields = [
            "id", "tenant", "kind", "base_model", "description", "status", "labels", "metrics",
            "artifact", "accuracy_delta", "livemode", "deleted_at",
        ]  # fmt: skip

    def validate_unique(self) -> None:
        # NOTE: the model's own check asks the default manager, which refuses a query not
        # scoped to a tenant (a model id is unique across tenants): a new model's id is
        # checked here on the unscoped one. The id is the only unique field, and it is
        # read-only once the model exists (AIModelAdmin.get_readonly_fields).
        model_id = self.cleaned_data.get("id")
        taken = model_id and AIModel.objects.unscoped().filter(pk=model_id).exists()
        if "id" in self.fields and taken:
            self.add_error("id", self.instance.unique_error_message(AIModel, ("id",)))


@admin.register(AIModel)
class AIModelAdmin(admin.ModelAdmin[AIModel]):
    form = AIModelAdminForm
    list_display = ["id", "kind", "tenant", "base_model", "status", "created_at", "deleted_at"]
    list_filter = ["kind", "status"]
    search_fields = ["id", "tenant__slug"]
    # A choice list of models would be every tenant's (and the scoped manager refuses to
    # list them unscoped); which model a variant derives from is set by the fine-tune.
    readonly_fields = ["parent", "files_released_at"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[AIModel]:
        return AIModel.objects.unscoped().select_related("tenant")

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # NOTE: a model is switched off (status: disabled) or, a fine-tuned one, deleted as
        # the API deletes it (``deleted_at``), never removed: one click removed minilm-l6,
        # every tenant's classifications on it a 404 until ``manage.py seed`` (an audit),
        # and a removed fine-tuned model would leave its file and variants behind.
        return False

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        # NOTE: a model's id is its primary key: "renaming" it in the form would save a
        # second row under the new id and leave the old one, its cached answers and its
        # variants behind. A deleted model whose file has left the store cannot be brought
        # back by clearing ``deleted_at`` (it would be listed, and fail every call).
        fields = list(self.readonly_fields)
        if obj is not None:
            fields.append("id")
            if obj.files_released_at is not None:
                fields.append("deleted_at")
        return fields
