mod support;

mod delivery;
mod durability;
mod ges;
mod isolation;
mod observability;
