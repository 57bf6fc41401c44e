"""Training on your own question-answer pairs: `rag tune reader` (reader.py: the span reader's adapter
and head) and `rag tune retriever` (retriever.py: the question-side adapter for dense search), from
the QA files qa_data.py reads, scored with SQuAD's EM/F1 (squad_metrics.py).

What a trained model is and how it loads stays in rag.models; only the training lives here.
"""
