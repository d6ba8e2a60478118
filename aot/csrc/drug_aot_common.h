/* Types and status codes shared by every library drug-compile generates. The generated
   <name>.h embeds this block, guarded, so that a program can include several such headers. */
#ifndef DRUG_AOT_COMMON
#define DRUG_AOT_COMMON

/* What every fallible drug_<name>_* function returns; drug_<name>_last_error(handle) says more. */
enum drug_status {
    DRUG_OK = 0,
    DRUG_ERR_NULL = 1,        /* a required pointer argument (handle, input, output, name, path) is NULL */
    DRUG_ERR_BATCH = 2,       /* batch is outside [1, drug_<name>_max_batch()] */
    DRUG_ERR_NAME = 3,        /* no parameter of that name */
    DRUG_ERR_SIZE = 4,        /* an element count does not match the parameter's */
    DRUG_ERR_MEMORY = 5,      /* out of memory */
    DRUG_ERR_IO = 6,          /* a checkpoint file could not be opened, read or written */
    DRUG_ERR_CHECKPOINT = 7,  /* not a drug checkpoint, damaged, or made for another model; nothing changed */
    DRUG_ERR_INDEX = 8,       /* a label or embedding id is out of range; the step was not completed */
    DRUG_ERR_UNSUPPORTED = 9, /* the library has no such function (e.g. a learning rate without optimizer) */
    DRUG_ERR_INTERNAL = 10    /* the generated code failed in an unexpected way */
};

/* A parameter as drug_<name>_param_info describes it; shapes are row-major (C order). */
typedef struct drug_tensor_info {
    const char *name;
    int ndim;
    const int64_t *shape;
    int64_t size;      /* elements */
    const char *dtype; /* NumPy's dtype.str, e.g. "<f4" */
} drug_tensor_info;

#endif /* DRUG_AOT_COMMON */
