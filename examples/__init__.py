"""Methods written outside the library on its public interface, each in a folder of its own."""
