/* What _conn.c and _lane.c share: the Spawner (a command line, the server's environment
 * and glibc's spawn attributes, made once) and its posix_spawnp. */
#ifndef QBOOT_CONN_H
#define QBOOT_CONN_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <spawn.h>
#include <sys/types.h>

typedef struct {
    PyObject_HEAD
    PyObject *file;  /* bytes */
    PyObject *argv;  /* tuple of bytes, kept alive for argv_pointers */
    PyObject *base;  /* tuple of bytes: the server's environment */
    char **argv_pointers;
    const char *file_path; /* the bytes of file */
    posix_spawnattr_t attributes;
    int attributes_ready;
} Spawner;

extern PyTypeObject SpawnerType;
extern PyTypeObject LaneType;

/* An int argument (PyLong_AsInt is public only from Python 3.13 on). */
int qboot_as_int(PyObject *object, int *out);
/* posix_spawnp of the Spawner's command line with envp, fd as stdin and stdout; touches
 * no Python object. Returns 0 or an errno value. */
int qboot_spawn(Spawner *spawner, char **envp, int fd, pid_t *pid);

#endif
