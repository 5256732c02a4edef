-- One database per service (each service has its own database and keys).
CREATE DATABASE manufacturer OWNER fdo;
CREATE DATABASE rendezvous OWNER fdo;
CREATE DATABASE owner OWNER fdo;
