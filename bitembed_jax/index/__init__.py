"""Our vectors in vector engines (usearch, faiss, PostgreSQL + pgvector): index folders, rescoring, the bench."""
