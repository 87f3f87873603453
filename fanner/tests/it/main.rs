mod support;

mod delivery;
mod durability;
mod gatekeeping;
mod ges;
mod isolation;
mod observability;
