// Initialises the bench result database in the official MongoDB image.
//
// Mounted into /docker-entrypoint-initdb.d/, it runs once (with mongosh) when the
// container starts on an empty data directory. It creates the collections bench uses,
// their indexes and a light $jsonSchema validator on `runs`, exactly as
// bench.store.mongo.MongoStore creates them itself on first use, so a database made
// either way is the same. The database name comes from BENCH_MONGO_DB (default
// "bench"); point BENCH_MONGO_URI at the same database.

const dbName =
  (typeof process !== "undefined" && process.env && process.env.BENCH_MONGO_DB) || "bench";
const target = db.getSiblingDB(dbName);

// The specification below must equal bench.store.mongo.COLLECTIONS; the store's tests
// compare them, so edit both together.
// BEGIN COLLECTIONS
const COLLECTIONS = {
  "runs": {
    "validator": {
      "$jsonSchema": {
        "bsonType": "object",
        "required": [
          "_id",
          "schema_version"
        ],
        "properties": {
          "_id": {
            "bsonType": "string"
          },
          "study": {
            "bsonType": "array",
            "items": {
              "bsonType": "string"
            }
          },
          "config": {
            "bsonType": "object"
          },
          "status": {
            "enum": [
              "pending",
              "running",
              "completed",
              "failed",
              "diverged",
              "interrupted"
            ]
          },
          "attempts": {
            "bsonType": [
              "int",
              "long"
            ]
          },
          "started_at": {
            "bsonType": [
              "string",
              "null"
            ]
          },
          "finished_at": {
            "bsonType": [
              "string",
              "null"
            ]
          },
          "heartbeat_at": {
            "bsonType": [
              "string",
              "null"
            ]
          },
          "env": {
            "bsonType": "object"
          },
          "summary": {
            "bsonType": "object"
          },
          "error": {
            "bsonType": [
              "string",
              "null"
            ]
          },
          "schema_version": {
            "bsonType": [
              "int",
              "long"
            ]
          }
        }
      }
    },
    "validationLevel": "moderate",
    "indexes": [
      {
        "name": "study_1",
        "key": {
          "study": 1
        }
      },
      {
        "name": "status_1",
        "key": {
          "status": 1
        }
      },
      {
        "name": "config.norm_1",
        "key": {
          "config.norm": 1
        }
      },
      {
        "name": "config.batch_size_1",
        "key": {
          "config.batch_size": 1
        }
      },
      {
        "name": "config.optimizer_1",
        "key": {
          "config.optimizer": 1
        }
      },
      {
        "name": "config.arch_1",
        "key": {
          "config.arch": 1
        }
      },
      {
        "name": "config.dataset_1",
        "key": {
          "config.dataset": 1
        }
      }
    ]
  },
  "metrics": {
    "indexes": [
      {
        "name": "run_id_1_epoch_1",
        "key": {
          "run_id": 1,
          "epoch": 1
        },
        "unique": true
      }
    ]
  },
  "steps": {
    "indexes": [
      {
        "name": "run_id_1_bucket_1",
        "key": {
          "run_id": 1,
          "bucket": 1
        },
        "unique": true
      }
    ]
  },
  "studies": {
    "indexes": []
  }
};
// END COLLECTIONS

const existing = target.getCollectionNames();
for (const [name, spec] of Object.entries(COLLECTIONS)) {
  const options = {};
  if (spec.validator) {
    options.validator = spec.validator;
    options.validationLevel = spec.validationLevel;
  }
  if (!existing.includes(name)) {
    target.createCollection(name, options);
  } else if (spec.validator) {
    target.runCommand(Object.assign({ collMod: name }, options));
  }
  for (const index of spec.indexes) {
    const indexOptions = { name: index.name };
    if (index.unique) {
      indexOptions.unique = true;
    }
    target.getCollection(name).createIndex(index.key, indexOptions);
  }
}

print(`bench: initialised database "${dbName}" (${Object.keys(COLLECTIONS).join(", ")})`);
