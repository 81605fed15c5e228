"""Mail as a Dagster resource: a thin wrapper that opens the transport a mail URL names."""

from __future__ import annotations

import dagster as dg
from pydantic import Field, PrivateAttr

from backup_pipeline.mail import Mailer, open_transport


class MailerResource(dg.ConfigurableResource):
    """Where emails go (a mail URL, see backup_pipeline.mail) and who they come from."""

    url: str = Field(description="file:///folder (an outbox of .eml files) or sendgrid://[HOST]")
    from_email: str = Field(description="Sender of every email, e.g. 'Respaldos <r@clinica.mx>'")
    support_email: str = Field(
        description="Support's address: alerts go to it, clinics reply to it"
    )

    # One transport (one HTTP client) per resource instance, built on first use: a run that sends
    # nothing never needs the API key.
    _mailer: Mailer | None = PrivateAttr(default=None)

    def get_mailer(self) -> Mailer:
        """The plain Mailer the services take: this resource's transport and addresses."""
        if self._mailer is None:
            self._mailer = Mailer(
                transport=open_transport(self.url),
                from_email=self.from_email,
                support_email=self.support_email,
            )
        return self._mailer
