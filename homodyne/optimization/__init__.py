"""The fitting engine: one bounded Levenberg–Marquardt over streamed JᵀJ for every tier."""
