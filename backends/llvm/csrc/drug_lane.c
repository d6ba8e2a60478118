/* The plain call of a compiled step, in C: check the feeds, bind them and run the step.

   A call whose feeds are exactly what the inputs declare (a dict holding an ndarray of the
   input's dtype and shape, C-contiguous, for every input), at a batch size the executor already
   holds buffers for, needs none of the Python around a step. Done in Python, that call costs a
   few microseconds more than the step itself, more than the step's own time for a small model at
   batch 1: the step has just streamed the weights through the caches, and every Python object
   touched afterwards is a cache miss. Here a call touches the feeds and the pointer table.

   Anything else (a missing or unknown feed, another type, dtype, shape or layout, a new batch
   size) returns None, and the Python path checks, converts or explains it: this file decides no
   error. A step that stops with a status returns it, and Python builds the message. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

#define MAX_DIMS 32
#define MAX_INPUTS 64

typedef int32_t (*drug_step)(void *table, int64_t batch, void *runtime);
typedef int (*blas_threads_get)(void);
typedef void (*blas_threads_set)(int);

typedef struct {
    PyObject *name;  /* the feed's key */
    PyObject *dtype; /* what its `dtype` must equal */
    int ndim;
    int batch_axis; /* -1: no batch dimension */
    Py_ssize_t shape[MAX_DIMS];
    Py_ssize_t slot; /* its entry in the pointer table; -1: the step does not read it */
} Input;

typedef struct {
    PyObject_HEAD
    drug_step step;
    void *runtime;
    blas_threads_get blas_get; /* numpy's OpenBLAS, set to one thread while the step runs (or NULL) */
    blas_threads_set blas_set;
    PyObject *ndarray; /* the type a feed must be exactly */
    PyObject *tables;  /* dict: batch size -> address of its pointer table, kept by the executor */
    Py_ssize_t count;
    Input inputs[MAX_INPUTS];
} Lane;

static PyObject *dtype_name; /* "dtype", interned */

static void Lane_dealloc(Lane *self) {
    for (Py_ssize_t i = 0; i < self->count; i++) {
        Py_XDECREF(self->inputs[i].name);
        Py_XDECREF(self->inputs[i].dtype);
    }
    Py_XDECREF(self->ndarray);
    Py_XDECREF(self->tables);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static void *address_of(PyObject *value) {
    void *address = PyLong_AsVoidPtr(value);
    return address == NULL && PyErr_Occurred() ? NULL : address;
}

/* Lane(step, runtime, blas_get, blas_set, ndarray, tables, inputs): addresses as ints (0: no
   BLAS to set), inputs as (name, dtype, shape with None for the batch, slot) tuples. */
static int Lane_init(Lane *self, PyObject *args, PyObject *kwargs) {
    PyObject *step, *runtime, *get, *set, *ndarray, *tables, *inputs;
    if (!PyArg_ParseTuple(args, "OOOOOO!O!:Lane", &step, &runtime, &get, &set, &ndarray, &PyDict_Type, &tables,
                          &PyList_Type, &inputs))
        return -1;
    if (self->count) {
        PyErr_SetString(PyExc_TypeError, "Lane is initialized once");
        return -1;
    }
    self->step = (drug_step)address_of(step);
    self->runtime = address_of(runtime);
    self->blas_get = (blas_threads_get)address_of(get);
    self->blas_set = (blas_threads_set)address_of(set);
    if (PyErr_Occurred()) return -1;
    if (!self->step || !PyType_Check(ndarray) || (self->blas_get == NULL) != (self->blas_set == NULL)) {
        PyErr_SetString(PyExc_ValueError, "Lane needs a step, the ndarray type and both BLAS functions or neither");
        return -1;
    }
    Py_ssize_t count = PyList_GET_SIZE(inputs);
    if (count > MAX_INPUTS) {
        PyErr_Format(PyExc_ValueError, "Lane takes at most %d inputs", MAX_INPUTS);
        return -1;
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        Input *input = &self->inputs[i];
        PyObject *name, *dtype, *shape;
        Py_ssize_t slot;
        if (!PyArg_ParseTuple(PyList_GET_ITEM(inputs, i), "UOO!n", &name, &dtype, &PyTuple_Type, &shape, &slot))
            return -1;
        Py_ssize_t ndim = PyTuple_GET_SIZE(shape);
        if (ndim > MAX_DIMS) {
            PyErr_Format(PyExc_ValueError, "input %R has more than %d dimensions", name, MAX_DIMS);
            return -1;
        }
        input->ndim = (int)ndim;
        input->batch_axis = -1;
        for (Py_ssize_t d = 0; d < ndim; d++) {
            PyObject *size = PyTuple_GET_ITEM(shape, d);
            if (size == Py_None) {
                if (input->batch_axis >= 0) {
                    PyErr_Format(PyExc_ValueError, "input %R has two batch dimensions", name);
                    return -1;
                }
                input->batch_axis = (int)d;
                input->shape[d] = -1;
            } else if ((input->shape[d] = PyLong_AsSsize_t(size)) < 0) {
                if (!PyErr_Occurred()) PyErr_Format(PyExc_ValueError, "input %R has a negative size", name);
                return -1;
            }
        }
        input->slot = slot;
        Py_INCREF(name);
        Py_INCREF(dtype);
        input->name = name;
        input->dtype = dtype;
        self->count = i + 1;
    }
    Py_INCREF(ndarray);
    Py_INCREF(tables);
    self->ndarray = ndarray;
    self->tables = tables;
    return 0;
}

/* Where `value` keeps its elements, if it is the ndarray `input` declares (its batch size, if it
   has one, in *batch: the same for every feed); NULL otherwise, or with an exception set. */
static void *plain_feed(Lane *self, const Input *input, PyObject *value, Py_ssize_t *batch) {
    if ((PyObject *)Py_TYPE(value) != self->ndarray) return NULL;
    PyObject *dtype = PyObject_GetAttr(value, dtype_name);
    if (dtype == NULL) return NULL;
    int same = dtype == input->dtype ? 1 : PyObject_RichCompareBool(dtype, input->dtype, Py_EQ);
    Py_DECREF(dtype);
    if (same != 1) return NULL;
    Py_buffer view; /* read-only arrays too: nothing here asks for a writable buffer */
    if (PyObject_GetBuffer(value, &view, PyBUF_C_CONTIGUOUS) != 0) {
        PyErr_Clear(); /* not contiguous: the Python path copies it */
        return NULL;
    }
    void *data = view.buf;
    int fits = view.ndim == input->ndim;
    for (int d = 0; fits && d < input->ndim; d++) {
        if (d != input->batch_axis)
            fits = view.shape[d] == input->shape[d];
        else if (*batch < 0)
            *batch = view.shape[d];
        else
            fits = view.shape[d] == *batch;
    }
    PyBuffer_Release(&view); /* the feeds dict keeps the array alive through the step */
    return fits ? data : NULL;
}

/* lane(feeds) -> (status, batch) after running the step, or None: not a plain call. */
static PyObject *Lane_call(Lane *self, PyObject *args, PyObject *kwargs) {
    PyObject *feeds;
    if (!PyArg_ParseTuple(args, "O:Lane", &feeds)) return NULL;
    if (!PyDict_CheckExact(feeds) || PyDict_GET_SIZE(feeds) != self->count) Py_RETURN_NONE;
    void *data[MAX_INPUTS];
    Py_ssize_t batch = -1;
    for (Py_ssize_t i = 0; i < self->count; i++) {
        PyObject *value = PyDict_GetItemWithError(feeds, self->inputs[i].name);
        if (value == NULL || (data[i] = plain_feed(self, &self->inputs[i], value, &batch)) == NULL) {
            if (PyErr_Occurred()) return NULL;
            Py_RETURN_NONE;
        }
    }
    if (batch < 0) batch = 0; /* no batch dimension: the executor's buffers for batch 0 */
    PyObject *key = PyLong_FromSsize_t(batch);
    if (key == NULL) return NULL;
    PyObject *found = PyDict_GetItemWithError(self->tables, key);
    Py_DECREF(key);
    if (found == NULL) {
        if (PyErr_Occurred()) return NULL;
        Py_RETURN_NONE; /* a batch size without buffers yet */
    }
    uint64_t *table = address_of(found);
    if (table == NULL) return NULL;
    for (Py_ssize_t i = 0; i < self->count; i++)
        if (self->inputs[i].slot >= 0) table[self->inputs[i].slot] = (uint64_t)(uintptr_t)data[i];
    int32_t status;
    Py_BEGIN_ALLOW_THREADS
    int threads = self->blas_get ? self->blas_get() : 0;
    if (self->blas_set) self->blas_set(1);
    status = self->step(table, (int64_t)batch, self->runtime);
    if (self->blas_set) self->blas_set(threads);
    Py_END_ALLOW_THREADS
    return Py_BuildValue("(in)", (int)status, batch);
}

static PyTypeObject LaneType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "drug.backends.llvm._drug_lane.Lane",
    .tp_doc = "The plain call of one compiled step: check the feeds, bind them, run the step.",
    .tp_basicsize = sizeof(Lane),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Lane_init,
    .tp_dealloc = (destructor)Lane_dealloc,
    .tp_call = (ternaryfunc)Lane_call,
};

#ifndef DRUG_LANE_SOURCE
#define DRUG_LANE_SOURCE "unknown"
#endif

static struct PyModuleDef lane_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "_drug_lane",
    .m_doc = "The plain call of a compiled step in C (see drug/backends/llvm/lane.py).",
    .m_size = -1,
};

PyMODINIT_FUNC PyInit__drug_lane(void) {
    if (PyType_Ready(&LaneType) < 0) return NULL;
    dtype_name = PyUnicode_InternFromString("dtype");
    if (dtype_name == NULL) return NULL;
    PyObject *module = PyModule_Create(&lane_module);
    if (module == NULL) return NULL;
    /* the SHA-256 of the source this module was built from (the build passes it in) */
    if (PyModule_AddStringConstant(module, "SOURCE", DRUG_LANE_SOURCE) < 0 ||
        PyModule_AddIntConstant(module, "MAX_INPUTS", MAX_INPUTS) < 0 ||
        PyModule_AddIntConstant(module, "MAX_DIMS", MAX_DIMS) < 0 ||
        PyModule_AddObjectRef(module, "Lane", (PyObject *)&LaneType) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
