"""The model IR: loading/saving, topology, constants, shapes. Only here is graphsurgeon used."""
