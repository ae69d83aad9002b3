/* The per-connection system calls of qboot-tcpsrv's accept loop, in C.
 *
 * accept4() giving an fd and (ip, port) without a socket object; close, setsockopt and a
 * MSG_DONTWAIT send that keep the GIL (they cannot block, and each release of the GIL is a
 * thread switch while spawner threads wait for it); getsockname() for wildcard listeners;
 * and a Spawner: posix_spawnp() with the GIL released, the command line and the server's
 * own environment laid out once, the spawn attributes built once from the real glibc types.
 * spawn.py and netcalls.py hold the pure-Python equivalents (QBOOT_NO_EXTENSION=1).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <arpa/inet.h>
#include <errno.h>
#include <limits.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdint.h>
#include <spawn.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* An int argument (PyLong_AsInt is public only from Python 3.13 on). */
static int as_int(PyObject *object, int *out)
{
    long value = PyLong_AsLong(object);
    if (value == -1 && PyErr_Occurred())
        return -1;
    if (value < INT_MIN || value > INT_MAX) {
        PyErr_SetString(PyExc_OverflowError, "value out of range for a C int");
        return -1;
    }
    *out = (int)value;
    return 0;
}

/* (ip, port) of a socket address, or None for a family other than IPv4 and IPv6. */
static PyObject *address_tuple(const struct sockaddr_storage *address)
{
    char text[INET6_ADDRSTRLEN];
    int port;
    if (address->ss_family == AF_INET) {
        const struct sockaddr_in *in4 = (const struct sockaddr_in *)address;
        if (!inet_ntop(AF_INET, &in4->sin_addr, text, sizeof text))
            return PyErr_SetFromErrno(PyExc_OSError);
        port = ntohs(in4->sin_port);
    } else if (address->ss_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)address;
        if (!inet_ntop(AF_INET6, &in6->sin6_addr, text, sizeof text))
            return PyErr_SetFromErrno(PyExc_OSError);
        port = ntohs(in6->sin6_port);
    } else {
        errno = EAFNOSUPPORT;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    return Py_BuildValue("(si)", text, port);
}

static PyObject *conn_accept(PyObject *self, PyObject *arg)
{
    int listener;
    if (as_int(arg, &listener) < 0)
        return NULL;
    struct sockaddr_storage address;
    socklen_t size = sizeof address;
    /* The listener is non-blocking: this never waits, so the GIL stays. The new fd is
     * blocking (no SOCK_NONBLOCK), as the child wants it. */
    int fd = accept4(listener, (struct sockaddr *)&address, &size, SOCK_CLOEXEC);
    if (fd < 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    PyObject *pair = address_tuple(&address);
    if (!pair) {
        close(fd);
        return NULL;
    }
    PyObject *result = Py_BuildValue("(iN)", fd, pair);
    if (!result)
        close(fd);
    return result;
}

static PyObject *conn_local_address(PyObject *self, PyObject *arg)
{
    int fd;
    if (as_int(arg, &fd) < 0)
        return NULL;
    struct sockaddr_storage address;
    socklen_t size = sizeof address;
    if (getsockname(fd, (struct sockaddr *)&address, &size) != 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    return address_tuple(&address);
}

static PyObject *conn_close(PyObject *self, PyObject *arg)
{
    int fd;
    if (as_int(arg, &fd) < 0)
        return NULL;
    close(fd); /* EINTR/EIO: the fd is gone either way on Linux */
    Py_RETURN_NONE;
}

/* setsockopt with an int, or with an empty value (None); errors ignored, as tcpserver. */
static PyObject *conn_set_option(PyObject *self, PyObject *args)
{
    int fd, level, name;
    PyObject *value;
    if (!PyArg_ParseTuple(args, "iiiO", &fd, &level, &name, &value))
        return NULL;
    if (value == Py_None) {
        setsockopt(fd, level, name, NULL, 0);
    } else {
        int number;
        if (as_int(value, &number) < 0)
            return NULL;
        setsockopt(fd, level, name, &number, sizeof number);
    }
    Py_RETURN_NONE;
}

/* Send what fits without waiting; errors ignored. */
static PyObject *conn_send_now(PyObject *self, PyObject *args)
{
    int fd;
    Py_buffer data;
    if (!PyArg_ParseTuple(args, "iy*", &fd, &data))
        return NULL;
    (void)send(fd, data.buf, (size_t)data.len, MSG_DONTWAIT | MSG_NOSIGNAL);
    PyBuffer_Release(&data);
    Py_RETURN_NONE;
}

/* cdb's hash of a key, as djb's cdb_hash(): the rules lookup runs it a few times per
 * connection. */
static PyObject *conn_djb_hash(PyObject *self, PyObject *arg)
{
    Py_buffer key;
    if (PyObject_GetBuffer(arg, &key, PyBUF_SIMPLE) < 0)
        return NULL;
    uint32_t hash = 5381;
    const unsigned char *bytes = key.buf;
    for (Py_ssize_t i = 0; i < key.len; i++)
        hash = ((hash << 5) + hash) ^ bytes[i];
    PyBuffer_Release(&key);
    return PyLong_FromUnsignedLong(hash);
}

/* --- Spawner -------------------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    PyObject *file;  /* bytes */
    PyObject *argv;  /* tuple of bytes, kept alive for argv_pointers */
    PyObject *base;  /* tuple of bytes: the server's environment */
    char **argv_pointers;
    posix_spawnattr_t attributes;
    int attributes_ready;
} Spawner;

/* A list or tuple of bytes as a new tuple (no str, nothing else). */
static PyObject *bytes_tuple(PyObject *sequence, const char *what)
{
    PyObject *items = PySequence_Tuple(sequence);
    if (!items)
        return NULL;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(items); i++) {
        if (!PyBytes_Check(PyTuple_GET_ITEM(items, i))) {
            Py_DECREF(items);
            return PyErr_Format(PyExc_TypeError, "%s must hold bytes", what);
        }
    }
    return items;
}

static int spawner_init(Spawner *self, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"argv", "base_env", "default_signals", NULL};
    PyObject *argv, *base, *signals;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOO", keywords, &argv, &base, &signals))
        return -1;
    if (self->argv) {
        PyErr_SetString(PyExc_RuntimeError, "Spawner initialised twice");
        return -1;
    }
    self->argv = bytes_tuple(argv, "argv");
    if (!self->argv)
        return -1;
    Py_ssize_t count = PyTuple_GET_SIZE(self->argv);
    if (count == 0) {
        PyErr_SetString(PyExc_ValueError, "argv is empty");
        return -1;
    }
    self->file = Py_NewRef(PyTuple_GET_ITEM(self->argv, 0));
    self->base = bytes_tuple(base, "base_env");
    if (!self->base)
        return -1;
    self->argv_pointers = PyMem_Calloc((size_t)count + 1, sizeof(char *));
    if (!self->argv_pointers) {
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < count; i++)
        self->argv_pointers[i] = PyBytes_AS_STRING(PyTuple_GET_ITEM(self->argv, i));

    sigset_t defaults, empty;
    sigemptyset(&defaults);
    sigemptyset(&empty);
    PyObject *numbers = PySequence_Tuple(signals);
    if (!numbers)
        return -1;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(numbers); i++) {
        int number;
        if (as_int(PyTuple_GET_ITEM(numbers, i), &number) < 0) {
            Py_DECREF(numbers);
            return -1;
        }
        /* glibc refuses (EINVAL) the signals it keeps for itself (32 and 33 for
         * threads): those stay out of the set, and out of the program's reach anyway. */
        if (sigaddset(&defaults, number) != 0 && errno != EINVAL) {
            Py_DECREF(numbers);
            PyErr_SetFromErrno(PyExc_OSError);
            return -1;
        }
    }
    Py_DECREF(numbers);
    int error = posix_spawnattr_init(&self->attributes);
    if (error == 0) {
        self->attributes_ready = 1;
        error = posix_spawnattr_setsigdefault(&self->attributes, &defaults);
    }
    if (error == 0)
        error = posix_spawnattr_setsigmask(&self->attributes, &empty);
    if (error == 0)
        error = posix_spawnattr_setflags(&self->attributes,
                                         POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK);
    if (error != 0) {
        errno = error;
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    return 0;
}

static void spawner_dealloc(Spawner *self)
{
    if (self->attributes_ready)
        posix_spawnattr_destroy(&self->attributes);
    PyMem_Free(self->argv_pointers);
    Py_XDECREF(self->file);
    Py_XDECREF(self->argv);
    Py_XDECREF(self->base);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* spawn(extra, fd, base=None): run the program with base (or the server's environment)
 * then extra, both tuples/lists of b"NAME=value", and fd as stdin and stdout. A value
 * with a NUL reaches the program cut there (a C string). Returns the pid. */
static PyObject *spawner_spawn(Spawner *self, PyObject *args)
{
    PyObject *extra_arg, *base_arg = Py_None;
    int fd;
    if (!PyArg_ParseTuple(args, "Oi|O", &extra_arg, &fd, &base_arg))
        return NULL;
    if (!self->argv_pointers)
        return PyErr_Format(PyExc_RuntimeError, "Spawner not initialised");
    PyObject *extra = bytes_tuple(extra_arg, "the environment");
    if (!extra)
        return NULL;
    PyObject *base = base_arg == Py_None ? Py_NewRef(self->base)
                                         : bytes_tuple(base_arg, "the environment");
    if (!base) {
        Py_DECREF(extra);
        return NULL;
    }
    Py_ssize_t base_count = PyTuple_GET_SIZE(base), extra_count = PyTuple_GET_SIZE(extra);
    char **envp = PyMem_Calloc((size_t)(base_count + extra_count + 1), sizeof(char *));
    if (!envp) {
        Py_DECREF(extra);
        Py_DECREF(base);
        return PyErr_NoMemory();
    }
    for (Py_ssize_t i = 0; i < base_count; i++)
        envp[i] = PyBytes_AS_STRING(PyTuple_GET_ITEM(base, i));
    for (Py_ssize_t i = 0; i < extra_count; i++)
        envp[base_count + i] = PyBytes_AS_STRING(PyTuple_GET_ITEM(extra, i));

    posix_spawn_file_actions_t actions;
    pid_t pid = 0;
    int error = posix_spawn_file_actions_init(&actions);
    if (error == 0) {
        error = posix_spawn_file_actions_adddup2(&actions, fd, 0);
        if (error == 0)
            error = posix_spawn_file_actions_adddup2(&actions, fd, 1);
        if (error == 0) {
            /* The kernel's part (vfork until the child has exec'd): let the loop run. */
            Py_BEGIN_ALLOW_THREADS
            error = posix_spawnp(&pid, PyBytes_AS_STRING(self->file), &actions,
                                 &self->attributes, self->argv_pointers, envp);
            Py_END_ALLOW_THREADS
        }
        posix_spawn_file_actions_destroy(&actions);
    }
    PyMem_Free(envp);
    Py_DECREF(extra);
    Py_DECREF(base);
    if (error != 0) {
        errno = error;
        return PyErr_SetFromErrnoWithFilenameObject(PyExc_OSError, self->file);
    }
    return PyLong_FromLong((long)pid);
}

static PyMethodDef spawner_methods[] = {
    {"spawn", (PyCFunction)spawner_spawn, METH_VARARGS,
     "spawn(extra, fd, base=None) -> pid: posix_spawnp with the GIL released."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject SpawnerType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "qboot_systemd.tcpsrv._conn.Spawner",
    .tp_basicsize = sizeof(Spawner),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Spawner(argv, base_env, default_signals): posix_spawnp of one command line.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)spawner_init,
    .tp_dealloc = (destructor)spawner_dealloc,
    .tp_methods = spawner_methods,
};

static PyMethodDef conn_methods[] = {
    {"accept", conn_accept, METH_O, "accept(listener_fd) -> (fd, (ip, port))"},
    {"local_address", conn_local_address, METH_O, "local_address(fd) -> (ip, port)"},
    {"close", conn_close, METH_O, "close(fd)"},
    {"set_option", conn_set_option, METH_VARARGS, "set_option(fd, level, name, int|None)"},
    {"send_now", conn_send_now, METH_VARARGS, "send_now(fd, data)"},
    {"djb_hash", conn_djb_hash, METH_O, "djb_hash(key) -> cdb's hash"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef conn_module = {
    PyModuleDef_HEAD_INIT, "_conn", "qboot-tcpsrv's per-connection system calls.", -1,
    conn_methods,
};

PyMODINIT_FUNC PyInit__conn(void)
{
    if (PyType_Ready(&SpawnerType) < 0)
        return NULL;
    PyObject *module = PyModule_Create(&conn_module);
    if (!module)
        return NULL;
    if (PyModule_AddObjectRef(module, "Spawner", (PyObject *)&SpawnerType) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
