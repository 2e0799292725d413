"""Taking things back: deleting a result, cancelling a job or an upload being fetched.

:class:`EditService` inherits these. Each is allowed to the person who asked and to a
moderator of the server it belongs to (servers are walls: never a moderator elsewhere).
"""

from __future__ import annotations

from editor.worker import EditWorker
from sessions.errors import NotAllowed, UserError
from sessions.jobs import JobRunner
from sessions.models import Author, Job, Place, Version
from sessions.store import Store
from sessions.writer import Writer


class Moderation:
    """Deletes and cancels, checked against who asks and from where."""

    _store: Store
    _writer: Writer
    _worker: EditWorker
    _jobs: JobRunner

    def get_version(self, version_id: str, *, place: Place) -> Version:
        raise NotImplementedError  # TreeQueries'

    def get_job(self, job_id: str) -> Job:
        raise NotImplementedError  # TreeQueries'

    async def delete_version(self, version_id: str, by: Author, *, place: Place) -> Version:
        """Mark a result deleted (its requester or a moderator here): it stays in the tree for
        the branches made from it, and leaves /history."""
        version = self.get_version(version_id, place=place)
        if version.is_original:
            raise UserError("The original image can't be deleted here; its edits are built on it.")
        if by.id != version.author_id and not by.is_moderator:
            raise NotAllowed("Only the person who asked for this edit, or a moderator, can delete it.")
        return await self._writer.run(lambda store: store.mark_deleted(version_id, by.id))

    async def cancel(self, job_id: str, by: Author, *, place: Place) -> bool:
        """Cancel a waiting or running job, or an upload still being fetched; False if it had ended.

        The requester may cancel their own; a moderator only jobs of the server they moderate.
        """
        uploads = self._store.uploads.all(job_id)
        if uploads and self._store.get_job(job_id) is None:
            _may_cancel(by, uploads[0].requester.id, uploads[0].place, place)
            await self._writer.run(lambda store: store.uploads.delete(job_id))
            return True
        job = self.get_job(job_id)
        _may_cancel(by, job.requester_id, self._store.conversation_place(job.conversation_id), place)
        if job.is_final:
            return False
        if self._worker.cancel(job_id):
            return True
        if self._jobs.following(job_id):
            return False  # finished in the worker a moment ago; its result is being saved
        # Left over from an earlier run and not taken up (start() not called yet).
        await self._writer.run(lambda store: store.finish_job(job_id, "cancelled", "The edit was cancelled."))
        return True


def _may_cancel(by: Author, requester_id: str, home: Place, place: Place) -> None:
    if by.id != requester_id and not (by.is_moderator and home.shares_scope(place)):
        raise NotAllowed("Only the person who asked for this edit, or a moderator, can cancel it.")
