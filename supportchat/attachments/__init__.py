"""Attachments (issue 16): images and files uploaded over REST and sent in
chat messages by id.

- ``models.py``: the stored metadata (:class:`Attachment`), the errors the
  REST edge answers, the limits.
- ``upload.py``: what runs on the worker thread pool for one upload: the
  streaming multipart reader, type sniffing, hashing and the size limit,
  the virus scan, and ``images.py``'s decoding under a pixel limit,
  re-encoding and thumbnail.
- ``blobs.py``: where the bytes live (``BlobStore``: the local filesystem,
  content-addressed, and its in-memory twin).
- ``store.py``: where the metadata lives (``AttachmentStore``: SQL and its
  in-memory twin), including the claim of an upload by one message.
- ``scan.py``: the virus scanner seam (ClamAV's clamd and a twin).
- ``links.py``: signed, short-lived download links, minted per response.
- ``service.py``: :class:`AttachmentService`, which puts them together for
  the REST routes (``http/attachments_api.py``) and the chat handler.
"""
