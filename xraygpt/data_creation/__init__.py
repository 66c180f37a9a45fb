"""Turn public OpenI / ROCO releases into ``filter_cap.json`` datasets.

Readers (``openi``, ``roco``) produce :class:`~xraygpt.data_creation.records.SourceItem`;
``filters`` and ``splitting`` choose and split them; ``offline`` (rules) or ``llm``
(any OpenAI-compatible server) writes the text; ``pipeline`` runs it resumably through
``cache`` and ``writer``; ``merge`` joins finished datasets.  Nothing here registers
with the registry, so importing the package stays cheap.
"""
