//! Envelope encryption for Tern (the implementation lands in the following commits).
