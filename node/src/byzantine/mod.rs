//! Named faulty behaviours.
