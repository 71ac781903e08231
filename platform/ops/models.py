from django.db import models


class Worker(models.Model):
    """No table: the admin's entry for the Workers page (``ops.admin``), whose rows are the
    workers' presence reports in Redis (``ops.workers``). Its view permission
    (``ops.view_worker``) is who may see that page."""

    name = models.CharField(max_length=200, primary_key=True)

    class Meta:
        managed = False
        verbose_name = "worker"

    def __str__(self) -> str:
        return self.name
